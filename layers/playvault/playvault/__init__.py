"""PlayVault domain package: archive every Spotify play of every authorized user.

Knows nothing of Lambda events: the handlers in functions/ parse events and call in here.
"""
