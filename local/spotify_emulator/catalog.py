"""Deterministic fake music catalog: tracks, albums and artists shaped like Spotify's.

Everything is derived from ``(seed, index)`` with a private ``random.Random`` so the same
seed always yields the same catalog, independent of call order or threads.
"""

from __future__ import annotations

import random
from functools import lru_cache
from urllib.parse import quote_plus

BASE62 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
API_BASE = "https://api.spotify.com/v1"
OPEN_BASE = "https://open.spotify.com"
MARKETS = ["AR", "AT", "AU", "BE", "BR", "CA", "CH", "DE", "DK", "ES", "FI", "FR", "GB", "IE", "IT",
           "JP", "MX", "NL", "NO", "NZ", "PL", "PT", "SE", "US"]
CATALOG_SIZE = 500  # distinct tracks; track_index is taken modulo this
ARTIST_COUNT = 60
ALBUM_COUNT = 120

_ADJ = ["Silver", "Broken", "Electric", "Quiet", "Golden", "Midnight", "Paper", "Neon", "Hollow", "Wild",
        "Velvet", "Northern", "Crimson", "Lonely", "Burning", "Glass", "Secret", "Summer", "Frozen", "Lucky"]
_NOUN = ["Hearts", "River", "Lights", "Machine", "Garden", "Horizon", "Echo", "Fever", "Skyline", "Tide",
         "Mirrors", "Ghosts", "Satellite", "Harbor", "Parade", "Dream", "Signal", "Canyon", "Storm", "Orbit"]
_FIRST = ["Ava", "Leo", "Mila", "Noah", "Iris", "Theo", "Luna", "Felix", "Nora", "Oscar", "Ruby", "Jonas"]


def base62_id(rng: random.Random) -> str:
    """A 22-character base62 id, like a real Spotify id."""
    return "".join(rng.choice(BASE62) for _ in range(22))


def _rng(seed: int, kind: str, index: int) -> random.Random:
    return random.Random(f"spotify-emulator:{seed}:{kind}:{index}")


@lru_cache(maxsize=4096)
def artist(seed: int, index: int) -> dict:
    rng = _rng(seed, "artist", index)
    aid = base62_id(rng)
    if rng.random() < 0.4:
        name = f"{rng.choice(_FIRST)} {rng.choice(_NOUN)}"
    else:
        name = f"The {rng.choice(_ADJ)} {rng.choice(_NOUN)}"
    return {
        "external_urls": {"spotify": f"{OPEN_BASE}/artist/{aid}"},
        "href": f"{API_BASE}/artists/{aid}",
        "id": aid,
        "name": name,
        "type": "artist",
        "uri": f"spotify:artist:{aid}",
    }


@lru_cache(maxsize=4096)
def _album_core(seed: int, index: int) -> dict:
    rng = _rng(seed, "album", index)
    alb_id = base62_id(rng)
    artist_index = rng.randrange(ARTIST_COUNT)
    kind = rng.choices(["album", "single", "compilation"], weights=[6, 3, 1])[0]
    year = rng.randint(1965, 2025)
    precision = rng.choices(["day", "month", "year"], weights=[8, 1, 1])[0]
    if precision == "day":
        release = f"{year:04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}"
    elif precision == "month":
        release = f"{year:04d}-{rng.randint(1, 12):02d}"
    else:
        release = f"{year:04d}"
    img = "".join(rng.choice("0123456789abcdef") for _ in range(40))
    return {
        "id": alb_id,
        "artist_index": artist_index,
        "album_type": kind,
        "total_tracks": 1 if kind == "single" else rng.randint(6, 18),
        "name": f"{rng.choice(_ADJ)} {rng.choice(_NOUN)}",
        "release_date": release,
        "release_date_precision": precision,
        "image": f"https://i.scdn.co/image/ab67616d0000b273{img[:24]}",
        "markets": sorted(rng.sample(MARKETS, rng.randint(len(MARKETS) - 6, len(MARKETS)))),
    }


def album(seed: int, index: int) -> dict:
    """A SimplifiedAlbumObject."""
    core = _album_core(seed, index)
    aid = core["id"]
    return {
        "album_type": core["album_type"],
        "artists": [artist(seed, core["artist_index"])],
        "available_markets": list(core["markets"]),
        "external_urls": {"spotify": f"{OPEN_BASE}/album/{aid}"},
        "href": f"{API_BASE}/albums/{aid}",
        "id": aid,
        "images": [
            {"url": core["image"], "height": 640, "width": 640},
            {"url": core["image"].replace("b273", "1e02"), "height": 300, "width": 300},
            {"url": core["image"].replace("b273", "4851"), "height": 64, "width": 64},
        ],
        "name": core["name"],
        "release_date": core["release_date"],
        "release_date_precision": core["release_date_precision"],
        "total_tracks": core["total_tracks"],
        "type": "album",
        "uri": f"spotify:album:{aid}",
    }


def track(seed: int, index: int) -> dict:
    """A full TrackObject for catalog entry ``index`` (mod CATALOG_SIZE)."""
    index %= CATALOG_SIZE
    rng = _rng(seed, "track", index)
    tid = base62_id(rng)
    album_index = rng.randrange(ALBUM_COUNT)
    alb = album(seed, album_index)
    artists = list(alb["artists"])
    if rng.random() < 0.2:
        feat = artist(seed, rng.randrange(ARTIST_COUNT))
        if feat["id"] != artists[0]["id"]:
            artists.append(feat)
    isrc = f"{rng.choice(['US', 'GB', 'SE', 'DE', 'FR'])}{''.join(rng.choice(BASE62[10:36]) for _ in range(3))}" \
           f"{rng.randint(0, 99):02d}{rng.randint(0, 99999):05d}"
    return {
        "album": alb,
        "artists": artists,
        "available_markets": list(alb["available_markets"]),
        "disc_number": 1,
        "duration_ms": rng.randint(95_000, 420_000),
        "explicit": rng.random() < 0.15,
        "external_ids": {"isrc": isrc},
        "external_urls": {"spotify": f"{OPEN_BASE}/track/{tid}"},
        "href": f"{API_BASE}/tracks/{tid}",
        "id": tid,
        "is_local": False,
        "name": f"{rng.choice(_ADJ)} {rng.choice(_NOUN)}",
        "popularity": rng.randint(0, 100),
        "preview_url": None,
        "track_number": rng.randint(1, max(1, alb["total_tracks"])),
        "type": "track",
        "uri": f"spotify:track:{tid}",
    }


def local_track(seed: int, index: int) -> dict:
    """A local-file TrackObject: is_local true, null ids/hrefs/uris (track, album, artists)."""
    rng = _rng(seed, "local", index)
    artist_name = f"{rng.choice(_FIRST)} {rng.choice(_NOUN)}"
    album_name = f"{rng.choice(_ADJ)} Demos"
    title = f"{rng.choice(_ADJ)} {rng.choice(_NOUN)} (home recording)"
    seconds = rng.randint(120, 360)
    uri = "spotify:local:" + ":".join(quote_plus(x) for x in (artist_name, album_name, title)) + f":{seconds}"
    local_artist: dict = {"external_urls": {}, "href": None, "id": None, "name": artist_name, "type": "artist",
                    "uri": None}
    return {
        "album": {
            "album_type": "album",
            "artists": [dict(local_artist)],
            "available_markets": [],
            "external_urls": {},
            "href": None,
            "id": None,
            "images": [],
            "name": album_name,
            # Local files carry no release date; Spotify sends null here, which the schema
            # forbids (not a documented exception), so the emulator sends an empty year string.
            "release_date": "",
            "release_date_precision": "year",
            "total_tracks": 0,
            "type": "album",
            "uri": None,
        },
        "artists": [local_artist],
        "available_markets": [],
        "disc_number": 0,
        "duration_ms": seconds * 1000,
        "explicit": False,
        "external_ids": {},
        "external_urls": {},
        "href": None,
        "id": None,
        "is_local": True,
        "name": title,
        "popularity": 0,
        "preview_url": None,
        "track_number": 0,
        "type": "track",
        "uri": uri,
    }


def episode(seed: int, index: int) -> dict:
    """A podcast EpisodeObject (as `track` of a play item: seen in the wild, not in the schema)."""
    rng = _rng(seed, "episode", index % CATALOG_SIZE)
    eid, sid = base62_id(rng), base62_id(rng)
    return {
        "id": eid,
        "type": "episode",
        "name": f"Episode {rng.randint(1, 400)}: {rng.choice(_ADJ)} {rng.choice(_NOUN)}",
        "uri": f"spotify:episode:{eid}",
        "href": f"{API_BASE}/episodes/{eid}",
        "external_urls": {"spotify": f"{OPEN_BASE}/episode/{eid}"},
        "duration_ms": rng.randint(600_000, 5_400_000),
        "explicit": False,
        "release_date": f"{rng.randint(2015, 2026):04d}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "release_date_precision": "day",
        "show": {"id": sid, "type": "show", "name": f"The {rng.choice(_NOUN)} Show", "uri": f"spotify:show:{sid}",
                 "href": f"{API_BASE}/shows/{sid}", "external_urls": {"spotify": f"{OPEN_BASE}/show/{sid}"}},
    }
