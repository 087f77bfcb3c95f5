"""The opt-in alias (mooncake_client/compat/alias.py): `mooncake.store` is ours only when asked
for, and a real Mooncake wheel beside it keeps its other modules. Each case runs in a fresh
interpreter, as an inference server would start."""
import os
import subprocess
import sys

import pytest

from mooncake_client.compat import alias

PROBE = """
import mooncake.store
print(mooncake.store.MooncakeDistributedStore.__module__)
"""


def _run(code: str, *path: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def real_wheel(tmp_path):
    """A stand-in for an installed Mooncake wheel: a package with its own __init__, an engine
    module, and a store that is not ours."""
    package = tmp_path / "mooncake"
    package.mkdir()
    (package / "__init__.py").write_text("WHEEL_VERSION = '0.3.7'\n")
    (package / "engine.py").write_text("NAME = 'real engine'\n")
    (package / "store.py").write_text("class MooncakeDistributedStore:\n    pass\n")
    return str(tmp_path)


def test_the_module_prints_the_path_to_put_first():
    result = subprocess.run([sys.executable, "-m", "mooncake_client.compat.alias"],
                            capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == alias.SHIM_DIR
    assert os.path.isfile(os.path.join(alias.SHIM_DIR, "mooncake", "store.py"))


def test_without_opting_in_the_real_wheel_is_untouched(real_wheel):
    assert _run(PROBE, real_wheel).stdout.strip() == "mooncake.store"


def test_opted_in_the_store_is_ours_and_the_wheel_keeps_its_other_modules(real_wheel):
    code = PROBE + "import mooncake, mooncake.engine\nprint(mooncake.WHEEL_VERSION, mooncake.engine.NAME)\n"
    result = _run(code, alias.SHIM_DIR, real_wheel)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["mooncake_client.compat.store", "0.3.7 real engine"]


def test_opted_in_without_any_wheel():
    result = _run(PROBE + "from mooncake.store import ReplicateConfig\nprint(ReplicateConfig().replica_num)\n",
                  alias.SHIM_DIR)
    assert result.stdout.split() == ["mooncake_client.compat.store", "1"], result.stderr


def test_install_in_process_and_its_refusal_once_the_real_one_is_loaded(real_wheel):
    code = "from mooncake_client.compat import alias\nalias.install()\n" + PROBE
    assert _run(code, real_wheel).stdout.strip() == "mooncake_client.compat.store"
    late = "import mooncake\nfrom mooncake_client.compat import alias\nalias.install()\n"
    result = _run(late, real_wheel)
    assert result.returncode != 0 and "imported before the alias" in result.stderr


def test_two_copies_of_the_shim_on_the_path_and_a_wheel_behind_them(tmp_path, real_wheel):
    # another install of mooncake-pool, reached through a symlink: neither is taken for the wheel
    link = tmp_path / "shim-link"
    link.symlink_to(alias.SHIM_DIR)
    code = PROBE + "import mooncake\nprint(mooncake.WHEEL_VERSION, len(mooncake.__path__))\n"
    result = _run(code, str(link), alias.SHIM_DIR, real_wheel)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split() == ["mooncake_client.compat.store", "0.3.7", "2"]


def test_the_wheels_init_runs_with_its_own_file(real_wheel):
    init = os.path.join(real_wheel, "mooncake", "__init__.py")
    with open(init, "a") as f:
        f.write("import os\nHERE = os.path.dirname(__file__)\n")
    result = _run("import mooncake\nprint(mooncake.HERE)\nprint(mooncake.__file__)\n",
                  alias.SHIM_DIR, real_wheel)
    here, own = result.stdout.split()
    assert here == os.path.join(real_wheel, "mooncake") and own.startswith(alias.SHIM_DIR)
