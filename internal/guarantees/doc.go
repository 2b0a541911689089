// Package guarantees holds stem's end-to-end fault and attack tests of the
// promises the README makes (no two copies of a task at once, nothing lost
// when a broker forgets its data, ...), run against every engine: SQLite
// always, Redis and Postgres when STEM_TEST_REDIS_URL and
// STEM_TEST_POSTGRES_URL are set (mandatory under CI). It has no code of
// its own; the tests are the package.
package guarantees
