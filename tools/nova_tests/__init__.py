"""Nova's generic compute driver tests (``_VirtDriverTestCase``) against
vmops' Nova driver on vmops' fake hypervisor: ``scripts/nova-tests``."""
