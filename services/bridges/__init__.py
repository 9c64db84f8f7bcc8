"""Where blocking libraries meet trio: one small module per library, shared by every driver.

- :mod:`.asyncio_thread`: asyncio-only libraries (pysnmp 7) on one loop thread per process.
- :mod:`.mqtt`: paho-mqtt's network thread, its messages as a trio channel.
- :mod:`.usb`: pyusb devices found, shared per process and driven from worker threads.
- :mod:`.can`: python-can buses bridged into trio.

A driver that needs one of these imports it from here; no driver starts threads or event
loops for a library on its own.
"""
