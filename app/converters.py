"""URL converters: an asset name (with at most one ``org/`` part) and a SemVer version.

They keep ``/v1/assets/{name}/versions/...`` unambiguous for names such as ``acme/versions``:
a version segment must start with a digit, so ``/v1/assets/acme/versions/versions`` is the
version list of ``acme/versions``, not version "versions" of ``acme``.
"""

from __future__ import annotations

from werkzeug.routing import BaseConverter

NAME_REGEX = r"[a-z0-9][a-z0-9._-]{0,63}(?:/[a-z0-9][a-z0-9._-]{0,63})?"
VERSION_REGEX = r"[0-9][0-9A-Za-z.+-]{0,255}"


class AssetNameConverter(BaseConverter):
    regex = NAME_REGEX
    part_isolating = False


class VersionConverter(BaseConverter):
    regex = VERSION_REGEX


CONVERTERS: dict[str, tuple[type[BaseConverter], dict[str, str]]] = {
    "asset_name": (AssetNameConverter, {"type": "string", "pattern": f"^{NAME_REGEX}$"}),
    "semver": (VersionConverter, {"type": "string", "pattern": f"^{VERSION_REGEX}$"}),
}
