"""The ``power`` device kind: ``on``, ``off``, ``cycle``, ``state``, ``read``.

Names only, no imports: the catalog reads these without loading any driver library
(pysnmp, paho, pyusb); a driver is imported when a service uses it.
"""

KIND = "power"
INTERFACE = "labctl.services.power.interface:PowerDriver"
DRIVERS = {
    "mock": "labctl.services.power.mock:MockPower",
    "snmp": "labctl.services.power.snmp:SnmpPower",
    "tasmota": "labctl.services.power.tasmota:TasmotaPower",
    "ykush": "labctl.services.power.ykush:YkushPower",
    "shell": "labctl.services.power.shell:ShellPower",
    "qemu": "labctl.services.power.qemu:QemuPower",
}
