# Two commands do all the set-up on a fresh Debian machine:
#   make demo   record a session through qmprr against a real QEMU, verify it, show it
#   make test   lint (ruff, mypy), then run the whole test suite
# Both create .venv, install qmprr with its test extras, and install QEMU
# (Debian's qemu-system-x86 and qemu-utils) when it is missing and we are root.

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp

.PHONY: demo test lint setup qemu chromium libvirt bench spark-check clean

setup: $(STAMP) qemu chromium libvirt

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[test]'
	touch $(STAMP)

qemu:
	@if ! command -v qemu-system-x86_64 >/dev/null 2>&1 || ! command -v qemu-img >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing QEMU (Debian packages qemu-system-x86, qemu-utils)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq qemu-system-x86 qemu-utils >/dev/null; \
	  else \
	    echo "qmprr: QEMU is missing: run 'sudo apt-get install qemu-system-x86 qemu-utils' (or 'make' as root)"; exit 2; \
	  fi; \
	fi

# Headless Chromium draws the HTML report in the browser tests.
chromium:
	@if ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian's chromium (for the HTML report's browser tests)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; \
	  else \
	    echo "qmprr: chromium is missing: run 'sudo apt-get install chromium' (or 'make' as root)"; exit 2; \
	  fi; \
	fi

# A private libvirtd runs the libvirt tests (tests/libvirt_env.py): Debian's daemon, its QEMU
# driver and virsh, without recommends (no libvirt-daemon-system: it pulls in systemd).
# System mode wants the user libvirt-qemu and the groups libvirt-qemu and kvm to exist.
libvirt:
	@if ! command -v libvirtd >/dev/null 2>&1 && ! [ -x /usr/sbin/libvirtd ] || ! command -v virsh >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing libvirt (Debian packages libvirt-daemon, libvirt-daemon-driver-qemu, libvirt-clients)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients >/dev/null; \
	  else \
	    echo "qmprr: libvirt is missing: run 'sudo apt-get install --no-install-recommends libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients' (or 'make' as root); the libvirt tests need it"; \
	  fi; \
	fi
	@if [ "$$(id -u)" = 0 ]; then \
	  getent group kvm >/dev/null || groupadd --system kvm; \
	  getent group libvirt-qemu >/dev/null || groupadd --system libvirt-qemu; \
	  getent passwd libvirt-qemu >/dev/null || useradd --system --no-create-home --home-dir /var/lib/libvirt \
	    --shell /usr/sbin/nologin --gid libvirt-qemu --groups kvm libvirt-qemu; \
	fi

demo: setup
	$(PY) examples/demo.py

# ruff and mypy (configured in pyproject.toml): a few seconds, before the tests.
lint: $(STAMP)
	$(VENV)/bin/ruff check toolkit tests
	$(VENV)/bin/mypy

test: setup lint
	$(PY) -m pytest

bench: setup
	$(VENV)/bin/qmprr bench log

# Not part of 'make test': one question on Spark (local mode) over a Parquet export of
# recordings/, compared with DuckDB's answer. Needs Java (Debian's default-jre-headless) and
# pyspark (installed into .venv-spark).
SPARK_VENV := .venv-spark
spark-check: setup
	@command -v java >/dev/null 2>&1 || { \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq default-jre-headless >/dev/null; \
	  else echo "qmprr: Java is missing: run 'sudo apt-get install default-jre-headless'"; exit 2; fi; }
	test -x $(SPARK_VENV)/bin/python || $(PYTHON) -m venv --system-site-packages $(SPARK_VENV)
	$(SPARK_VENV)/bin/pip install --quiet --disable-pip-version-check 'pyspark==4.3.*' -e .
	rm -rf .spark-check && $(VENV)/bin/qmprr export --format parquet recordings -o .spark-check/ds
	$(SPARK_VENV)/bin/python examples/spark_check.py .spark-check/ds

clean:
	rm -rf $(VENV) $(SPARK_VENV) .spark-check .pytest_cache .hypothesis .mypy_cache .ruff_cache
