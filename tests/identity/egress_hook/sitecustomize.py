"""Loaded by every Python process started with this folder on PYTHONPATH: an audit hook
(PEP 578) that records each socket connect and name lookup to anything but loopback or a
Unix socket, in the file named by ENCLAVE_EGRESS_LOG. The hook sees the call before the
system does, so a connection that fails is recorded too."""

import ipaddress
import os
import sys

_LOG = os.environ.get("ENCLAVE_EGRESS_LOG", "")
_LOCAL_NAMES = {"localhost", "localhost.localdomain", "", None}


def _local(host: object) -> bool:
    if host in _LOCAL_NAMES:
        return True
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _hook(event: str, args: tuple[object, ...]) -> None:
    if event == "socket.connect":
        address = args[1]
        if not isinstance(address, tuple) or _local(address[0]):
            return
        target = f"{address[0]}:{address[1]}"
    elif event == "socket.getaddrinfo":
        if _local(args[0]):
            return
        target = f"lookup {args[0]}:{args[1]}"
    else:
        return
    with open(_LOG, "a") as out:
        out.write(f"{os.getpid()} {' '.join(sys.argv[1:4])} -> {target}\n")


if _LOG:
    sys.addaudithook(_hook)
