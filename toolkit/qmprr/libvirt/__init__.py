"""qmprr under libvirt: the emulator wrapper that records every libvirt-managed VM (docs/libvirt.md)."""
