#!/usr/bin/env bash
# Fetch the jars of one Apache Kafka broker from Maven Central into .cache/kafka/<version>/libs.
# Idempotent: a finished download leaves a stamp (the pom's checksum) and later runs return at once.
# The version is pinned in deploy/kafka/pom.xml; streamrec.kafka_local reads the same file.
# Prints the libs folder as its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
pom=deploy/kafka/pom.xml
version=$(sed -n 's:.*<kafka.version>\(.*\)</kafka.version>.*:\1:p' "$pom" | head -n1)
dest=.cache/kafka/$version/libs
stamp=.cache/kafka/$version/.complete
sum=$(cksum < "$pom")
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ] && [ -d "$dest" ]; then
    echo "$dest"
    exit 0
fi
missing=()
command -v java > /dev/null 2>&1 || [ -x "${JAVA_HOME:-/nonexistent}/bin/java" ] || missing+=("java (OpenJDK 17+, e.g. apt-get install openjdk-17-jre-headless)")
command -v mvn > /dev/null 2>&1 || missing+=("mvn (Apache Maven, e.g. apt-get install maven)")
if [ ${#missing[@]} -gt 0 ]; then
    echo "kafka-jars.sh: cannot fetch the Kafka $version broker jars; missing:" >&2
    for m in "${missing[@]}"; do echo "  - $m" >&2; done
    exit 1
fi
# Two test runs on a fresh clone may both get here: one downloads, the other waits and reuses.
mkdir -p .cache/kafka
if command -v flock > /dev/null 2>&1 && [ -z "${KAFKA_JARS_LOCKED:-}" ]; then
    KAFKA_JARS_LOCKED=1 exec flock .cache/kafka/.lock "$0" "$@"
fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$sum" ] && [ -d "$dest" ]; then
    echo "$dest"
    exit 0
fi
echo "kafka-jars.sh: resolving Apache Kafka $version jars from Maven Central (once)..." >&2
# Download into a scratch folder and rename at the end, so an interrupted run leaves no half set.
tmp=$(mktemp -d ".cache/kafka/.libs.XXXXXX")
trap 'rm -rf "$tmp" "$tmp.log"' EXIT
if ! mvn -B -Dstyle.color=never -f "$pom" dependency:copy-dependencies -DincludeScope=runtime \
    -DoutputDirectory="$PWD/$tmp" > "$tmp.log" 2>&1; then
    grep -E 'ERROR|BUILD' "$tmp.log" >&2 || tail -n 30 "$tmp.log" >&2
    echo "kafka-jars.sh: Maven could not fetch the jars (is Maven Central reachable? see above)" >&2
    exit 1
fi
mkdir -p "$(dirname "$dest")"
rm -rf "$dest"
mv "$tmp" "$dest"
echo "$sum" > "$stamp"
echo "$dest"
