# vma-tool: nothing to build; these targets run the tests, the demo and the benchmarks,
# regenerate the man page, install, and build a Debian package.
PYTHON ?= python3
PREFIX ?= /usr/local
DESTDIR ?=
SYSCONFDIR ?= /etc
BINDIR = $(PREFIX)/bin
MANDIR = $(PREFIX)/share/man/man1
COMPLETIONDIR = $(PREFIX)/share/bash-completion/completions
DEBDIR ?= .
DEB_MAINTAINER ?= vma-tool developers <root@localhost>
VERSION = $(shell sed -n 's/^__version__ = "\(.*\)"/\1/p' vma-tool)
N ?= 2000
COVERAGE_DIR ?= coverage

.PHONY: test coverage demo bench bench-dedup fuzz man install uninstall deb

test:
	$(PYTHON) tests/run.py

# Line coverage of vma-tool while the tests run (tests/linecover.py; needs Python 3.12+ for
# sys.monitoring): $(PYTHON) if it is new enough, else the newest python3.1x found; skipped
# (exit 0) when there is none.  Writes $(COVERAGE_DIR)/report.txt: uncovered lines by function.
coverage:
	@py=""; \
	for p in "$(PYTHON)" python3.14 python3.13 python3.12 \
	         $$(ls -d "$$HOME"/.pyenv/versions/3.1[2-9]*/bin/python3 2>/dev/null | sort -rV); do \
	    if "$$p" -c 'import sys; sys.exit(not hasattr(sys, "monitoring"))' >/dev/null 2>&1; then \
	        py=$$p; break; \
	    fi; \
	done; \
	if [ -z "$$py" ]; then \
	    echo "make coverage: skipped: no Python 3.12 or newer found (try PYTHON=/path/to/python3.12)"; \
	    exit 0; \
	fi; \
	echo "== coverage with $$("$$py" --version) ($$py)"; \
	"$$py" tests/run.py --coverage "$(COVERAGE_DIR)"

demo:
	$(PYTHON) tests/demo.py

bench:
	$(PYTHON) tests/bench.py

bench-dedup:
	$(PYTHON) tests/bench_dedup.py

fuzz:
	$(PYTHON) tests/fuzz.py --cases $(N)

# vma-tool.1 from vma-tool's argparse parser (packaging/make_man.py); run it after changing an
# option: a test fails while the committed page differs from what the parser gives.
man:
	$(PYTHON) packaging/make_man.py vma-tool > vma-tool.1.new
	mv vma-tool.1.new vma-tool.1

# The tool, its man page, bash completion and /etc/vma-tool.conf (kept when it exists: it holds
# the admin's settings).
install:
	install -d $(DESTDIR)$(BINDIR) $(DESTDIR)$(MANDIR) $(DESTDIR)$(COMPLETIONDIR) $(DESTDIR)$(SYSCONFDIR)
	install -m 0755 vma-tool $(DESTDIR)$(BINDIR)/vma-tool
	install -m 0644 vma-tool.1 $(DESTDIR)$(MANDIR)/vma-tool.1
	install -m 0644 packaging/vma-tool.bash-completion $(DESTDIR)$(COMPLETIONDIR)/vma-tool
	@if [ -e $(DESTDIR)$(SYSCONFDIR)/vma-tool.conf ]; then \
	    echo "kept $(SYSCONFDIR)/vma-tool.conf"; \
	else \
	    install -m 0644 packaging/vma-tool.conf $(DESTDIR)$(SYSCONFDIR)/vma-tool.conf; \
	fi
	@echo "installed $(BINDIR)/vma-tool. To optimize every backup, add this line to /etc/vzdump.conf:"
	@echo "    script: $(BINDIR)/vma-tool"

uninstall:
	rm -f $(DESTDIR)$(BINDIR)/vma-tool $(DESTDIR)$(MANDIR)/vma-tool.1 $(DESTDIR)$(COMPLETIONDIR)/vma-tool

# $(DEBDIR)/vma-tool_<version>_all.deb with dpkg-deb: the files of `make install` under /usr, the
# man page gzipped and /etc/vma-tool.conf a conffile, as Debian policy has them.
deb:
	@command -v dpkg-deb >/dev/null || { echo "make deb: dpkg-deb not found (apt-get install dpkg)"; exit 1; }
	root=$$(mktemp -d) && trap 'rm -rf "$$root"' EXIT && \
	$(MAKE) --no-print-directory install DESTDIR="$$root" PREFIX=/usr SYSCONFDIR=/etc >/dev/null && \
	gzip -9n "$$root/usr/share/man/man1/vma-tool.1" && \
	install -d "$$root/usr/share/doc/vma-tool" "$$root/DEBIAN" && \
	install -m 0644 LICENSE "$$root/usr/share/doc/vma-tool/copyright" && \
	echo /etc/vma-tool.conf > "$$root/DEBIAN/conffiles" && \
	sed -e 's/@VERSION@/$(VERSION)/' -e "s/@INSTALLED_SIZE@/$$(du -sk --exclude=DEBIAN "$$root" | cut -f1)/" \
	    -e 's/@MAINTAINER@/$(DEB_MAINTAINER)/' packaging/control.in > "$$root/DEBIAN/control" && \
	chmod -R u+rwX,go+rX,go-w "$$root" && \
	dpkg-deb --root-owner-group -Zgzip --build "$$root" "$(DEBDIR)/vma-tool_$(VERSION)_all.deb"
