#!/bin/sh
# Prints the Python that `make` builds .venv with; says why on stderr and exits 1 when there is none.
#   pick_python.sh            the first of python3, python3.13, python3.12, python3.11, python3.14
#                             on PATH that is 3.11 or newer
#   pick_python.sh PYTHON     that one (the user named it: `make test PYTHON=...`), if new enough
# Why 3.11: the pinned numpy 2.4 and scipy 1.17 need it, and 3.10 reached its end of life in
# October 2026. Ubuntu 22.04's python3 is 3.10, so without this a first `make test` there ended
# in pip's "No matching distribution found for numpy==2.4.6".
# Plain sh (dash on Debian): the interpreter it judges may be too old for anything else.
MIN_MAJOR=3
MIN_MINOR=11

version_of() {  # "major minor micro", or nothing for a command that is not a working Python
    found=$("$1" -c 'import sys; print("%d %d %d" % sys.version_info[:3])' 2>/dev/null)
    case "$found" in
        *[!0-9\ ]* | "") return 1 ;;
    esac
    echo "$found"
}

new_enough() {  # major minor
    [ "$1" -gt "$MIN_MAJOR" ] || { [ "$1" -eq "$MIN_MAJOR" ] && [ "$2" -ge "$MIN_MINOR" ]; }
}

if [ -n "$1" ]; then
    if ! found=$(version_of "$1"); then
        echo "make: $1 does not run (not found, or not a Python interpreter)." >&2
        exit 1
    fi
    set -- "$1" $found
    if ! new_enough "$2" "$3"; then
        echo "make: $1 is Python $2.$3.$4; scops_fast needs $MIN_MAJOR.$MIN_MINOR or newer." >&2
        exit 1
    fi
    echo "$1"
    exit 0
fi

seen=""
for candidate in python3 python3.13 python3.12 python3.11 python3.14; do
    if ! command -v "$candidate" >/dev/null 2>&1; then
        [ "$candidate" = python3 ] && seen="no python3 on PATH"
        continue
    fi
    if ! found=$(version_of "$candidate"); then
        seen="${seen:+$seen, }$candidate does not run"
        continue
    fi
    set -- $found
    if new_enough "$1" "$2"; then
        if [ -n "$seen" ]; then
            echo "make: using $candidate (Python $1.$2.$3); $seen." >&2
        fi
        echo "$candidate"
        exit 0
    fi
    seen="${seen:+$seen, }$candidate is $1.$2.$3, too old"
done
echo "make: no Python $MIN_MAJOR.$MIN_MINOR or newer on PATH (${seen:-none of them found};" \
    "tried python3 and python3.11 to python3.14). Install one (Debian/Ubuntu: apt install" \
    "python3.12 python3.12-venv; or pyenv, or conda) and run: make test PYTHON=/path/to/python3.12" >&2
exit 1
