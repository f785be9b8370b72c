from setuptools import Extension, setup

# The hub's per-socket loop in C (ws4redis_uwsgi/bus/fanout.py says why). Optional: without a
# compiler the package installs all the same and runs the same loop in Python.
setup(
    ext_modules=[
        Extension("ws4redis_uwsgi.bus._fanout", ["ws4redis_uwsgi/bus/_fanout.c"], optional=True),
    ],
)
