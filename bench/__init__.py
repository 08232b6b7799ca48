"""Benchmarks of vmops against raw libvirt, qemu-img and qemu-system: `python -m bench`."""
