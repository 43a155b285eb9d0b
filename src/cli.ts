#!/usr/bin/env node
/**
 * The `mail-outbox` program (package.json "bin"). The CLI itself is in ./cli/: main.ts (the
 * program, global options, exit statuses, errors), one file per command group, format.ts.
 * Importing this file runs nothing; running it as a program runs `main` and exits with its status.
 */
import { isEntryPoint, runProgram } from "./cli/main.js";

export { main, EXIT_FAILURE, EXIT_FORCED, EXIT_FORCED_SIGTERM, EXIT_USAGE, type CliIO, type SignalSource, type Writable } from "./cli/main.js";

if (isEntryPoint(import.meta.url)) runProgram();
