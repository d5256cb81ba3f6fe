/*
 * hashkey_cmd.h — `leo-gateway hash-key`: prints the keyed hash ("kh1:...") of a tenant API key, the form the
 * config's tenants[].keys[].hash holds, or creates a new random key together with its hash.
 */
#ifndef LEO_HASHKEY_CMD_H
#define LEO_HASHKEY_CMD_H

/** Runs the subcommand; argv[0] is "hash-key". Usage:
 *    hash-key [--secret-env NAME] [KEY]       hash KEY, or one line read from stdin when KEY is absent
 *    hash-key [--secret-env NAME] --generate  print a new key "sk-leo-<40 url-safe base64>" and its hash
 *  The secret comes from the environment variable NAME (default LEO_KEY_HASH_SECRET); when it is unset the
 *  development secret is used and a warning goes to stderr. Output goes to stdout, one item per line.
 *  Returns 0 on success, 1 when stdin cannot be read, 2 on a usage error. */
int leo_hashkey_main(int argc, char **argv);

#endif
