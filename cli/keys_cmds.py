"""``labctl keys generate|show``: CurveZMQ key pairs for users, services and the broker.

Imported when the CLI starts, so it imports nothing heavy: ``labctl.keys`` (and through it
``zmq.auth``) only inside the commands.
"""

from __future__ import annotations

from pathlib import Path

import click

from .main import main


@main.group()
def keys() -> None:
    """CURVE key pairs: who you are to a broker that runs with keys (docs/security.md).

    A user's keys live in ~/.config/labctl ($LABCTL_CONFIG_DIR); a client uses them when
    LABCTL_BROKER_KEY names the broker's public key (Z85 or a .key file). The broker admin
    adds your public key to the broker's authorized_keys file.
    """


@keys.command("generate")
@click.argument("name", required=False)
@click.option(
    "--dir",
    "directory",
    default=None,
    type=click.Path(file_okay=False),
    help="Where to write NAME.key and NAME.key_secret [default: ~/.config/labctl]; "
    "a service's keys go beside its config.",
)
@click.option("--force", is_flag=True, help="Replace an existing key pair.")
def keys_generate(name: str | None, directory: str | None, force: bool) -> None:
    """Write a key pair NAME.key (public) and NAME.key_secret (mode 0600) [NAME: $USER]."""
    from labctl import keys as k

    name = name or k.default_name()
    public, secret = k.generate(name, Path(directory) if directory else k.config_dir(), force)
    click.echo(f"public key {k.load(public).public.decode()}")
    click.echo(f"wrote {public} and {secret} (secret: keep it to yourself)")


@keys.command("show")
@click.argument("key", required=False)
@click.option(
    "--entry",
    "role",
    type=click.Choice(["admin", "user", "service", "viewer"]),
    default=None,
    help="Print an authorized_keys entry with this role instead of the bare key.",
)
@click.option("--identity", default=None, help="The entry's identity [default: the key's name].")
def keys_show(key: str | None, role: str | None, identity: str | None) -> None:
    """Print the public key of KEY: a name in ~/.config/labctl, or a path to a .key or
    .key_secret file (the broker's: STATE/broker.key) [KEY: $USER]."""
    from labctl import keys as k

    spec = key or k.default_name()
    if "/" in spec or spec.endswith((".key", ".key_secret")):
        path = Path(spec).expanduser()
    else:
        path = k.config_dir() / f"{spec}.key"
        if not path.exists() and path.with_suffix(".key_secret").exists():
            path = path.with_suffix(".key_secret")
    if not path.exists():
        from labctl.errors import ConfigError

        raise ConfigError(f"no key at {path}: make one with `labctl keys generate {spec}`")
    public = k.load(path).public.decode()
    if role is None:
        click.echo(public)
        return
    who = identity or path.name.removesuffix(".key_secret").removesuffix(".key")
    click.echo(f'- key: "{public}"\n  identity: {who}\n  role: {role}')
    if role == "service":
        click.echo(f'  devices: ["{who}*"]   # the names or globs it may register')
