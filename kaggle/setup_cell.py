# pixelbyte setup: on Kaggle, install pixelbyte from the attached bundle; a no-op where it is installed
try:
    import pixelbyte
except ImportError:
    import glob, importlib, os, subprocess, sys
    inputs = os.environ.get("KAGGLE_INPUT", "/kaggle/input")
    wheels = sorted(glob.glob(f"{inputs}/**/pixelbyte-*.whl", recursive=True), key=os.path.getmtime)
    source = wheels[-1] if wheels else os.environ.get("PIXELBYTE_SOURCE")
    if not source:
        raise ImportError(f"pixelbyte is not installed and no pixelbyte-*.whl is under {inputs}: add the "
                          "pixelbyte-bundle dataset as an input, or set PIXELBYTE_SOURCE to a pip "
                          "requirement for pixelbyte (a wheel's URL, git+https://... of a copy of the code)")
    pip = [sys.executable, "-m", "pip", "install"]
    if wheels:  # the bundle also holds the requirements Kaggle's image lacks: offline first, then the index
        bundle = ["--find-links", os.path.dirname(source), source]
        if subprocess.run(pip + ["--no-index"] + bundle).returncode != 0:
            subprocess.run(pip + bundle, check=True)
    else:
        subprocess.run(pip + [source], check=True)
    importlib.invalidate_caches()
    import pixelbyte
