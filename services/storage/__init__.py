"""The ``storage`` device kind: an SD card (or disk) behind a mux, written from an upload
or a URI, decompressed by magic bytes, bmap-aware, verified, with progress events.

Importing this package imports no driver: the catalog loads one by name when a service
uses it.
"""

KIND = "storage"
INTERFACE = "labctl.services.storage.interface:StorageDriver"
DRIVERS = {
    "mock": "labctl.services.storage.mock:MockStorage",
    "sdwire": "labctl.services.storage.sdwire:SdWireStorage",
}
#: the kind's CLI group and SDK proxy (labctl.kinds reads them; names only)
CLI = "labctl.cli.storage_cmds:storage"
CLIENT = "labctl.storage:StorageDevice"
