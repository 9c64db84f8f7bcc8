"""The ``serial`` device kind: stream ``console``; ``send``, ``log``, ``break``, ``settings``,
``status``.

Names only, no imports: the catalog reads these without loading any driver library
(pyserial); a driver is imported when a service uses it.
"""

KIND = "serial"
INTERFACE = "labctl.services.serial.interface:SerialDriver"
DRIVERS = {
    "mock": "labctl.services.serial.mock:MockSerial",
    "pyserial": "labctl.services.serial.driver:SerialConsole",
}
