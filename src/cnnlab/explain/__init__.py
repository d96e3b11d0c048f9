"""``cnnlab explain``: a local page that shows how a trained network computes every number.

:mod:`cnnlab.explain.compute` does the arithmetic, :mod:`cnnlab.explain.run` holds a trained run and
answers the API, :mod:`cnnlab.explain.server` serves the page in ``static/`` and the API.
"""
