"""Example models for xmfast (see the README's "Bring your own model").

* ``models``: the declarations xmfast reads (names, settings, objective, dependencies); no torch,
  so listing models or planning a grid stays fast;
* ``networks``: the torch modules they build.
"""
