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
                          "requirement such as git+https://github.com/OWNER/pixelbyte")
    subprocess.run([sys.executable, "-m", "pip", "install", source], check=True)
    importlib.invalidate_caches()
    import pixelbyte
