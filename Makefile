# Thin aliases for tasks.py (which needs only Python): `make run`, `make test`.
.PHONY: setup run test
setup:
	python3 tasks.py setup
run:
	python3 tasks.py run
test:
	python3 tasks.py test

# Kaggle (GPU T4 x2), see README "Kaggle (T4 x2)" and kaggle/README.md. KAGGLE_USER=name overrides
# the username; KAGGLE_ARGS="--print-only" shows the kaggle commands without running them.
PY := .venv/bin/python
KAGGLE_CLI = $(PY) kaggle/cli.py
KAGGLE_OPTS = $(if $(KAGGLE_USER),--user $(KAGGLE_USER)) $(KAGGLE_ARGS)
.PHONY: kaggle-bundle kaggle-upload kaggle-push kaggle-push-notebooks kaggle-status kaggle-output kaggle-setup-cell
kaggle-bundle: setup
	$(KAGGLE_CLI) bundle $(KAGGLE_OPTS)
kaggle-upload: kaggle-bundle
	$(KAGGLE_CLI) upload $(KAGGLE_OPTS)
kaggle-push: setup
	$(KAGGLE_CLI) push $(KAGGLE_OPTS)
kaggle-push-notebooks: setup
	$(KAGGLE_CLI) push-notebooks $(KAGGLE_OPTS)
kaggle-status: setup
	$(KAGGLE_CLI) status $(KAGGLE_OPTS)
kaggle-output: setup
	$(KAGGLE_CLI) output $(KAGGLE_OPTS)
kaggle-setup-cell: setup
	$(KAGGLE_CLI) setup-cell
