"""Outlet OID templates for the PDUs the SNMP power driver knows by name.

Values are the MIB's own: APC PowerNet-MIB rPDUOutletControlOutletCommand (write
1 = immediateOn, 2 = immediateOff) read back through rPDUOutletStatusOutletState
(1 = on, 2 = off); the older MasterSwitch sPDUOutletCtl reads back on the same OID;
Raritan PDU2-MIB (PX2/PX3) switchingOperation (0 = off, 1 = on) with
outletSwitchingState (SensorStateEnumeration 7 = on, 8 = off) indexed by pduId.outletId;
Raritan PDU-MIB (PX1) outletOperationalState (0 = off, 1 = on) on one OID.
"""

from __future__ import annotations

import dataclasses

_OutletValue = int | str


@dataclasses.dataclass(frozen=True)
class OutletTemplate:
    """How to switch one outlet and read it back; ``{outlet}``/``{pdu}`` get substituted."""

    set_oid: str
    on_value: _OutletValue
    off_value: _OutletValue
    state_oid: str
    state_on: _OutletValue
    state_off: _OutletValue

    def substitute(self, outlet: int | None, pdu: int) -> OutletTemplate:
        def fill(oid: str) -> str:
            return oid.replace("{outlet}", str(outlet)).replace("{pdu}", str(pdu))

        return dataclasses.replace(self, set_oid=fill(self.set_oid), state_oid=fill(self.state_oid))


TEMPLATES: dict[str, OutletTemplate] = {
    "apc": OutletTemplate(
        set_oid=".1.3.6.1.4.1.318.1.1.12.3.3.1.1.4.{outlet}",
        on_value=1,
        off_value=2,
        state_oid=".1.3.6.1.4.1.318.1.1.12.3.5.1.1.4.{outlet}",
        state_on=1,
        state_off=2,
    ),
    "apc_masterswitch": OutletTemplate(
        set_oid=".1.3.6.1.4.1.318.1.1.4.4.2.1.3.{outlet}",
        on_value=1,
        off_value=2,
        state_oid=".1.3.6.1.4.1.318.1.1.4.4.2.1.3.{outlet}",
        state_on=1,
        state_off=2,
    ),
    "raritan": OutletTemplate(
        set_oid=".1.3.6.1.4.1.13742.6.4.1.2.1.2.{pdu}.{outlet}",
        on_value=1,
        off_value=0,
        state_oid=".1.3.6.1.4.1.13742.6.4.1.2.1.3.{pdu}.{outlet}",
        state_on=7,
        state_off=8,
    ),
    "raritan_px1": OutletTemplate(
        set_oid=".1.3.6.1.4.1.13742.4.1.2.2.1.3.{outlet}",
        on_value=1,
        off_value=0,
        state_oid=".1.3.6.1.4.1.13742.4.1.2.2.1.3.{outlet}",
        state_on=1,
        state_off=0,
    ),
}
