"""The seccomp profile of an executor container whose sandboxes are bubblewrap sandboxes.

bwrap makes each sandbox's namespaces and mounts itself, unprivileged, from inside the
executor's container (deploy/Dockerfile.executor-bwrap, Kubernetes' bubblewrap overlay). The
engine's default profile refuses exactly those calls to a container without CAP_SYS_ADMIN
(unshare, mount, pivot_root...), so such a container needs a profile of its own, and this is
it: the sandboxes' own deny list (drivers/seccomp.py) less the few calls bwrap makes, in the
OCI format Docker (`--security-opt seccomp=FILE`) and the kubelet (`seccompProfile: Localhost`)
read. Each sandbox still gets the full filter, installed by bwrap before the agent runs.

    python -m services.executor.container_profile > deploy/seccomp/executor-bwrap.json
"""

from __future__ import annotations

import json
from typing import Any

from services.executor.drivers.seccomp import DENIED, DENIED_ENOSYS

# What bwrap calls to build a sandbox: new namespaces, the new root's mounts, the pivot into it
# and the old root's unmount (denying any one of them fails bwrap; chroot it does not call).
BWRAP_NEEDS = ("unshare", "mount", "umount2", "pivot_root")
# Both ABIs of each architecture (a 32-bit program on a 64-bit kernel takes the same rules).
ARCHITECTURES = ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM")
EPERM, ENOSYS = 1, 38


def executor_profile() -> dict[str, Any]:
    """The profile: allow by default, refuse the sandboxes' deny list but for BWRAP_NEEDS."""
    denied = [name for name in DENIED if name not in BWRAP_NEEDS]
    return {
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": list(ARCHITECTURES),
        "syscalls": [
            {"names": denied, "action": "SCMP_ACT_ERRNO", "errnoRet": EPERM},
            {"names": list(DENIED_ENOSYS), "action": "SCMP_ACT_ERRNO", "errnoRet": ENOSYS},
        ],
    }


def render() -> str:
    return json.dumps(executor_profile(), indent=2) + "\n"


if __name__ == "__main__":
    print(render(), end="")
