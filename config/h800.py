# Alias of config/reference.py (the reference recipe), kept because older commands name this file. A config file
# runs in train.py's globals, so __file__ is train.py's: reference.py is found from the repo root.
exec(open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "config", "reference.py")).read())
