# The two entry points of the README: `make run` and `make test`.
PYTHON  := /usr/bin/python3
VENV    := .venv
DEMO    := demo/run
RUN_DEPS  := rsync python3-venv
TEST_DEPS := $(RUN_DEPS) openssh-server openssh-client sudo tmux zstd pigz acl attr procps chromium prometheus \
             python3-pip dpkg-dev debhelper lintian mmdebstrap systemd-container man-db

.PHONY: run test venv demo deb man clean

run: venv demo
	$(VENV)/bin/bkd --config $(DEMO)/bkd.toml serve

test: venv
	scripts/install-deps $(TEST_DEPS)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	scripts/install-deps $(RUN_DEPS)
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --disable-pip-version-check -e '.[test]'
	touch $@

demo: venv
	$(VENV)/bin/python demo/make_demo.py $(DEMO)

deb:
	scripts/install-deps dpkg-dev debhelper python3-pip
	scripts/build-deb dist

# The man pages and bash completion the package ships, from this tree: build/man/.
man: venv
	$(VENV)/bin/python scripts/clidocs.py build/man

clean:
	rm -rf $(VENV) $(DEMO)
