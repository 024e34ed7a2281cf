"""The adapter packages' public names, imported from their modules on first use."""

from __future__ import annotations

import subprocess
import sys

import pytest

import chimeway_backends.celery
import chimeway_backends.dramatiq


@pytest.mark.parametrize("package", [chimeway_backends.celery, chimeway_backends.dramatiq])
def test_every_exported_name_reads_and_dir_lists_it(package: object) -> None:
    names = package.__all__  # type: ignore[attr-defined]
    assert set(names) <= set(dir(package))
    for name in names:
        assert getattr(package, name) is not None


@pytest.mark.parametrize("package", [chimeway_backends.celery, chimeway_backends.dramatiq])
def test_a_name_the_package_does_not_export_is_an_attribute_error(package: object) -> None:
    with pytest.raises(AttributeError, match="has no attribute 'deliver_everything'"):
        package.deliver_everything  # type: ignore[attr-defined]  # noqa: B018


def test_reading_one_name_imports_its_module_and_not_the_others() -> None:
    probe = (
        "import sys\n"
        "from chimeway_backends.dramatiq import UnsafeEncoderError\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('chimeway_backends.dramatiq.'))\n"
        "print(' '.join(loaded))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    )
    assert "chimeway_backends.dramatiq.encoder" == completed.stdout.strip()
