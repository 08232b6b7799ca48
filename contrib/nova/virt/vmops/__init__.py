"""vmops as a Nova compute driver: ``compute_driver = vmops.VmopsDriver``.

Nova loads a compute driver only from its own ``nova.virt`` package
(``load_compute_driver`` prefixes ``nova.virt.``), so ``pip install
vmops[nova]`` puts this one module there. The driver itself is
:mod:`vmops.nova_driver`.
"""

from vmops.nova_driver import VmopsDriver

__all__ = ["VmopsDriver"]
