"""A simulated Tasmota plug on a real MQTT broker, for tests and the simulated lab.

Run ``python -m labctl.services.simulators.sim_tasmota --port 1883 --topic plug1``. It behaves
like Tasmota's default topics: ``cmnd/<topic>/POWER[n]`` with ``ON``/``OFF``/``TOGGLE``/
``1``/``0``/``2`` or empty (query) is answered on ``stat/<topic>/RESULT`` (JSON) and
``stat/<topic>/POWER[n]``; ``tele/<topic>/LWT`` is a retained ``Online`` with a will of
``Offline`` (so killing the process makes the broker publish ``Offline``); every
``--tele-period`` seconds it sends ``tele/<topic>/STATE`` and, with ``--meter``,
``tele/<topic>/SENSOR`` with an ``ENERGY`` object.

Lines on stdin stand in for the physical button: ``toggle``, ``on``, ``off`` (relay 1, or
``toggle 2``). It prints ``ready`` on stdout once it is connected, subscribed and has
published its LWT, and exits when stdin closes, so it never outlives its parent.
"""

from __future__ import annotations

import argparse
import json
import socket
import sys
import threading
import time
from datetime import datetime

import paho.mqtt.client as mqtt


class SimPlug:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.topic = args.topic
        self.relays = [args.initial == "on"] * args.relays
        self.lock = threading.Lock()
        self.energy_total = 0.0
        self.ready = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id)
        if args.username:
            self.client.username_pw_set(args.username, args.password)
        # like Tasmota: keep trying; paho's hints say int, but it computes with floats
        self.client.reconnect_delay_set(min_delay=0.1, max_delay=2)  # type: ignore[arg-type]
        self.client.will_set(f"tele/{self.topic}/LWT", "Offline", qos=1, retain=True)
        self.client.on_connect = self.on_connect
        self.client.on_message = self.on_message
        self.client.on_subscribe = self.on_subscribe

    def power_name(self, relay: int) -> str:
        return "POWER" if len(self.relays) == 1 else f"POWER{relay}"

    def on_connect(
        self, client: mqtt.Client, _u: object, _f: object, rc: object, _p: object
    ) -> None:
        if getattr(rc, "is_failure", False):
            print(f"refused: {rc}", file=sys.stderr, flush=True)
            return
        client.subscribe(f"cmnd/{self.topic}/+", qos=0)

    def on_subscribe(self, client: mqtt.Client, *_a: object) -> None:
        client.publish(f"tele/{self.topic}/LWT", "Online", qos=1, retain=True)
        self.ready.set()

    def on_message(self, _c: object, _u: object, msg: mqtt.MQTTMessage) -> None:
        command = msg.topic.rsplit("/", 1)[-1].upper()
        if not command.startswith("POWER"):
            return
        suffix = command[5:] or "1"
        if not suffix.isdigit() or not 1 <= int(suffix) <= len(self.relays):
            return
        self.apply(int(suffix), msg.payload.decode("utf-8", "replace"))

    def apply(self, relay: int, word: str) -> None:
        """Change (or just report) a relay the way Tasmota does, then publish its stat."""
        word = word.strip().upper()
        with self.lock:
            now = self.relays[relay - 1]
            if word in ("ON", "1", "TRUE"):
                now = True
            elif word in ("OFF", "0", "FALSE"):
                now = False
            elif word in ("TOGGLE", "2"):
                now = not now
            elif word != "":
                return
            self.relays[relay - 1] = now
        name, state = self.power_name(relay), "ON" if now else "OFF"
        self.client.publish(f"stat/{self.topic}/RESULT", json.dumps({name: state}))
        self.client.publish(f"stat/{self.topic}/{name}", state)

    def telemetry(self) -> None:
        while True:
            time.sleep(self.args.tele_period)
            with self.lock:
                states = list(self.relays)
            stamp = datetime.now().isoformat(timespec="seconds")
            body = {
                "Time": stamp,
                **{self.power_name(i + 1): "ON" if s else "OFF" for i, s in enumerate(states)},
            }
            self.client.publish(f"tele/{self.topic}/STATE", json.dumps(body))
            if self.args.meter:
                watts = self.args.watts if states[0] else 0.0
                self.energy_total += watts * self.args.tele_period / 3600_000
                current = round(watts / self.args.voltage, 3)
                energy = {"Total": round(self.energy_total, 6), "Power": watts, "ApparentPower": watts,
                          "Factor": 1.0 if watts else 0.0, "Voltage": self.args.voltage, "Current": current}  # fmt: skip
                self.client.publish(
                    f"tele/{self.topic}/SENSOR", json.dumps({"Time": stamp, "ENERGY": energy})
                )

    def run(self) -> int:
        self.client.connect(self.args.host, self.args.port, keepalive=self.args.keepalive)
        sock = self.client.socket()
        if isinstance(sock, socket.socket):  # Nagle would add ~40 ms to every reply
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.loop_start()
        if not self.ready.wait(10):
            print("not ready after 10s", file=sys.stderr, flush=True)
            return 1
        threading.Thread(target=self.telemetry, daemon=True).start()
        print("ready", flush=True)
        for line in sys.stdin:
            parts = line.split()
            if not parts:
                continue
            if parts[0] == "quit":
                break
            relay = int(parts[1]) if len(parts) > 1 else 1
            self.apply(relay, {"toggle": "TOGGLE", "on": "ON", "off": "OFF"}.get(parts[0], "?"))
        # A clean exit leaves "Offline" behind, like a plug that is switched off.
        self.client.publish(
            f"tele/{self.topic}/LWT", "Offline", qos=1, retain=True
        ).wait_for_publish(2)
        self.client.disconnect()
        self.client.loop_stop()
        return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=1883)
    p.add_argument("--topic", required=True)
    p.add_argument("--relays", type=int, default=1)
    p.add_argument("--initial", choices=("on", "off"), default="off")
    p.add_argument("--tele-period", type=float, default=300.0)
    p.add_argument("--meter", action="store_true", help="send ENERGY telemetry")
    p.add_argument("--voltage", type=float, default=230.0)
    p.add_argument("--watts", type=float, default=11.5, help="power drawn while relay 1 is on")
    p.add_argument("--username")
    p.add_argument("--password")
    p.add_argument("--client-id", default=None)
    p.add_argument("--keepalive", type=int, default=30)
    return SimPlug(p.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
