"""semdl.errors' install hint: the command that adds a missing extra, fitted to how semdl was installed."""


def test_install_hints_fit_the_install(monkeypatch):
    """An editable install (PEP 610 says so) gets `pip install -e ".[x]"`; a wheel or sdist install, where there is
    no source tree to install from, gets `pip install "semdl[x]"`."""
    from importlib import metadata

    from semdl import errors

    class Installed:
        def __init__(self, record):
            self.record = record

        def read_text(self, name):
            return self.record if name == "direct_url.json" else None

    editable = '{"url": "file:///src/semdl", "dir_info": {"editable": true}}'
    for records, hint in [
        ([editable], 'pip install -e ".[track]"'),
        (['{"url": "file:///src/semdl", "dir_info": {}}'], 'pip install "semdl[track]"'),
        ([None], 'pip install "semdl[track]"'),  # from an index: pip writes no direct_url.json
        # the source tree's own semdl.egg-info (no record), found first from the repository root, beside the
        # editable install's record in site-packages
        ([None, editable], 'pip install -e ".[track]"'),
    ]:
        installed = [Installed(record) for record in records]
        monkeypatch.setattr(metadata, "distributions", lambda name, installed=installed: installed)
        assert errors.install_hint("track") == hint
