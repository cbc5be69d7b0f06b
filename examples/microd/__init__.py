"""``microd``: microtrio's example application (microcluster's ``example/``).

What it shows, one module each:

* :mod:`.schema` - schema updates (``extended_table``, ``some_other_table``);
* :mod:`.api` - the ``extended`` server: ``POST /1.0/extended`` on the core API and the
  control socket, fanning out to every other member;
* :mod:`.hooks` - an implementation of every lifecycle hook that logs it;
* :mod:`.cli` - the command line: microtrio's commands, the example's ``daemon`` and
  ``extended [ADDRESS]``.

:func:`daemon_args` puts them together; :data:`API_EXTENSIONS` are reported in
``GET /core/1.0``.
"""

from __future__ import annotations

from .app import API_EXTENSIONS, VERSION, daemon_args

__all__ = ["API_EXTENSIONS", "VERSION", "daemon_args"]
