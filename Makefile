# Thin aliases for tasks.py (which needs only Python): `make run`, `make test`.
.PHONY: setup run test
setup:
	python3 tasks.py setup
run:
	python3 tasks.py run
test:
	python3 tasks.py test
