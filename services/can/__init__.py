"""The ``can`` device kind: ``send``, ``send_periodic``, ``stop_periodic``, ``state``, stream
``frames`` (filtered service-side), ISO-TP (``isotp_send``, ``isotp_recv``, stream ``isotp``).

Names only, no imports: the catalog reads these without loading python-can or can-isotp;
a driver is imported when a service uses it.
"""

KIND = "can"
INTERFACE = "labctl.services.can.interface:CanDriver"
DRIVERS = {
    "mock": "labctl.services.can.mock:MockCan",
    "python-can": "labctl.services.can.python_can:PythonCan",
}
#: the kind's CLI group and SDK proxy (labctl.kinds reads them; names only)
CLI = "labctl.cli.can_cmds:can"
CLIENT = "labctl.can:CanDevice"
