# vma-tool: nothing to build; these targets run the tests, the demo and the benchmarks.
PYTHON ?= python3
PREFIX ?= /usr/local
DESTDIR ?=
N ?= 2000
COVERAGE_DIR ?= coverage

.PHONY: test coverage demo bench bench-dedup fuzz install uninstall

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

install:
	install -d $(DESTDIR)$(PREFIX)/bin
	install -m 0755 vma-tool $(DESTDIR)$(PREFIX)/bin/vma-tool
	@echo "installed $(PREFIX)/bin/vma-tool. To optimize every backup, add this line to /etc/vzdump.conf:"
	@echo "    script: $(PREFIX)/bin/vma-tool"

uninstall:
	rm -f $(DESTDIR)$(PREFIX)/bin/vma-tool
