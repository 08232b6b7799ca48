"""Volumes: block storage that outlives the servers it is attached to.

- ``records.py``: the volume and attachment records (schema 7 tables in
  vmops.db) and Cinder's status names;
- ``pool.py``: the local pool, one file per volume in ``<state>/volumes``
  (qemu-img only; the format is recorded at creation, never probed again);
- ``manager.py``: the verbs (create, delete, extend, attach, detach) with
  their state rules, ordering and rollback, and the reconciliation a
  service start runs.

A volume attached to a server is one of its disks in the domain spec made
from the records (:func:`records.disk_specs`), so it is in every
definition vmops writes (spawn, rebuild) as well as hot-plugged into the
running guest.
"""
