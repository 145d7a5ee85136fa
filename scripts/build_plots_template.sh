#!/usr/bin/env bash
# Rebuild assets/dvc_plots_template.html: DVC's page template with vega, vega-lite and vega-embed
# inlined from their npm packages, so that `dvc plots show` / `dvc plots diff` work offline:
#
#     dvc plots show --html-template assets/dvc_plots_template.html
#
# DVC's own page loads the three libraries from a CDN. The template has DVC's {plot_divs} (and
# {refresh_tag}) placeholders but deliberately no {scripts}: DVC would fill that with CDN tags.
# Needs npm and its registry; run it to change versions and commit the result.
set -euo pipefail

VEGA=5.33.1
VEGA_LITE=5.23.0
VEGA_EMBED=6.29.0

root=$(cd "$(dirname "$0")/.." && pwd)
out=${1:-$root/assets/dvc_plots_template.html}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cd "$tmp"
npm pack --silent "vega@$VEGA" "vega-lite@$VEGA_LITE" "vega-embed@$VEGA_EMBED" >/dev/null
for pkg in "vega-$VEGA" "vega-lite-$VEGA_LITE" "vega-embed-$VEGA_EMBED"; do
    mkdir "$pkg"
    tar -xzf "$pkg.tgz" -C "$pkg" --strip-components=1
done
js=("vega-$VEGA/build/vega.min.js" "vega-lite-$VEGA_LITE/build/vega-lite.min.js"
    "vega-embed-$VEGA_EMBED/build/vega-embed.min.js")

# Inline scripts end at the first "</script"; DVC replaces its placeholders anywhere in the page.
if grep -l -e '</script' -e '{plot_divs}' -e '{scripts}' -e '{refresh_tag}' "${js[@]}"; then
    echo "error: a library above contains '</script' or a DVC placeholder; cannot inline it" >&2
    exit 1
fi

{
    cat <<HTML
<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    {refresh_tag}
    <title>DVC Plot</title>
    <!-- vega $VEGA, vega-lite $VEGA_LITE, vega-embed $VEGA_EMBED (each BSD-3-Clause, (c) the
         University of Washington Interactive Data Lab), inlined from npm by
         scripts/build_plots_template.sh so that this page needs no network. -->
HTML
    for f in "${js[@]}"; do
        printf '    <script>\n'
        sed '/^\/\/# sourceMappingURL=/d' "$f"  # the .map files are not shipped
        printf '\n    </script>\n'
    done
    cat <<'HTML'
    <style>
        table {
            border-spacing: 15px;
        }
    </style>
</head>
<body>
    {plot_divs}
</body>
</html>
HTML
} >"$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out ($(wc -c <"$out") bytes)"
