#!/usr/bin/env node
// Type-checks one TypeScript file strictly and, when it is clean, runs the emitted JavaScript
// in this same node process (so console output streams as it is produced).
//
//   node /app/ts-run.js main.ts              check, then run (a cold compiler: ~2 s)
//   node /app/ts-run.js --serve              the sandbox's warm checker (see serve())
//   node /app/ts-run.js --compiled main.ts   run main.js, which the warm checker wrote
//   node /app/ts-run.js --standby            the same, for a step named later (see standby())
//
// Any diagnostic is printed as "file:line:col - error TSxxxx: message" on stderr and the exit
// code is 2, so a type or syntax error is a failed step carrying the compiler's message.
"use strict";

const fs = require("fs");
const path = require("path");
const Module = require("module");
// Loaded by what compiles only: a step running checked code does not pay for the compiler.
let ts = null;

const TYPES_ROOT = path.join(__dirname, "node_modules", "@types");
const NODE_MODULES = path.join(__dirname, "node_modules");

function compilerOptions() {
  const options = {
    strict: true,
    target: ts.ScriptTarget.ES2022,
    module: ts.ModuleKind.CommonJS,
    moduleResolution: ts.ModuleResolutionKind.Node10,
    lib: ["lib.es2022.d.ts"],
    // The standard library is the runtime's own: no @typescript/lib-* package is looked for.
    libReplacement: false,
    esModuleInterop: true,
    skipLibCheck: true,
    noEmitOnError: true,
    sourceMap: false,
    inlineSourceMap: false,
    typeRoots: [TYPES_ROOT],
    types: [],
  };
  if (fs.existsSync(path.join(TYPES_ROOT, "node"))) {
    options.types = ["node"];
  }
  return options;
}

function formatDiagnostic(diagnostic) {
  const message = ts.flattenDiagnosticMessageText(diagnostic.messageText, "\n");
  const code = `error TS${diagnostic.code}`;
  if (diagnostic.file && diagnostic.start !== undefined) {
    const { line, character } = diagnostic.file.getLineAndCharacterOfPosition(diagnostic.start);
    const name = path.basename(diagnostic.file.fileName);
    return `${name}:${line + 1}:${character + 1} - ${code}: ${message}`;
  }
  return `${code}: ${message}`;
}

function compile(file, host, oldProgram, options = compilerOptions()) {
  const program = ts.createProgram([file], options, host, oldProgram);
  const diagnostics = ts.getPreEmitDiagnostics(program);
  if (diagnostics.length > 0) {
    return { diagnostics };
  }
  let js = null;
  const emitted = program.emit(undefined, (name, text) => {
    if (name.endsWith(".js")) js = text;
  });
  if (emitted.diagnostics.length > 0 || js === null) {
    return { diagnostics: emitted.diagnostics };
  }
  return { js, program };
}

// The warm checker, one per sandbox, started by the agent on the sandbox's first TypeScript
// step and kept for the next ones: one request line (a main.ts path) on stdin, one reply line
// on stdout, {"ok": true} with main.js written beside it, or {"diagnostics": [...]}. The
// compiler, the standard library's and @types/node's declarations stay parsed and bound,
// so a step's check costs about its own code.
function serve() {
  ts = require("typescript");
  const options = compilerOptions();
  const host = ts.createCompilerHost(options);
  // Every step's main.ts (a new directory each time) is checked under one name, its
  // directory's parent's main.ts (no file of the step's own is there): with the root file
  // the same, TypeScript reuses the previous program whole but for that file's text.
  const root = (file) => path.join(path.dirname(path.dirname(file)), "main.ts");
  let current = "";
  const cached = new Map();
  const readSourceFile = host.getSourceFile.bind(host);
  // Only the runtime's own files (read-only: the compiler's lib, @types) are kept; anything
  // a step may change is read again.
  const fileExists = host.fileExists;
  host.fileExists = (name) => name === root(current) || fileExists(name);
  const readFile = host.readFile;
  host.readFile = (name) => readFile(name === root(current) ? current : name);
  host.getSourceFile = (fileName, languageVersion, onError, shouldCreate) => {
    if (fileName === root(current)) {
      const text = host.readFile(fileName);
      return text === undefined ? undefined : ts.createSourceFile(fileName, text, languageVersion);
    }
    if (!fileName.startsWith(__dirname + "/")) {
      return readSourceFile(fileName, languageVersion, onError, shouldCreate);
    }
    let file = cached.get(fileName);
    if (file === undefined) {
      file = readSourceFile(fileName, languageVersion, onError, shouldCreate);
      cached.set(fileName, file);
    }
    return file;
  };
  let previous;
  let pending = "";
  process.stdin.setEncoding("utf8");
  process.stdin.on("data", (chunk) => {
    pending += chunk;
    let newline;
    while ((newline = pending.indexOf("\n")) >= 0) {
      const file = pending.slice(0, newline);
      pending = pending.slice(newline + 1);
      let reply;
      try {
        current = file;
        const result = compile(root(file), host, previous, options);
        if (result.diagnostics) {
          reply = { diagnostics: result.diagnostics.map(formatDiagnostic) };
        } else {
          previous = result.program;
          fs.writeFileSync(file.replace(/\.ts$/, ".js"), result.js, { mode: 0o600 });
          reply = { ok: true };
        }
      } catch (error) {
        reply = { error: String(error && error.stack ? error.stack : error) };
      }
      process.stdout.write(JSON.stringify(reply) + "\n");
    }
  });
  process.stdin.on("end", () => process.exit(0));
}

function run(file, js) {
  const filename = file.replace(/\.ts$/, ".js");
  const mod = new Module(filename, null);
  mod.filename = filename;
  // Resolve require() from the task directory first, then the runtime's own packages.
  mod.paths = [...Module._nodeModulePaths(process.cwd()), NODE_MODULES];
  require.main = mod;
  process.mainModule = mod;
  mod._compile(js, filename);
}

// A standby runner: node started ahead of a step (its startup is most of a small checked
// step's time), already on that step's stdout/stderr, in its session, with its environment.
// It waits, blocked reading descriptor 3, for "main.ts path NUL cwd NUL" from the agent,
// then runs that main.js as `--compiled` would; descriptor 3 closed before: EOF, it just ends.
function standby() {
  // Made now, as the first console.log would: the step's output pipes are already ours.
  void process.stdout;
  void process.stderr;
  const chunks = [];
  const buffer = Buffer.alloc(8192);
  let fields = [];
  for (;;) {
    let n;
    try {
      n = fs.readSync(3, buffer, 0, buffer.length, null);
    } catch (error) {
      if (error.code === "EINTR" || error.code === "EAGAIN") continue;
      throw error;
    }
    if (n === 0) process.exit(0);
    chunks.push(Buffer.from(buffer.subarray(0, n)));
    fields = Buffer.concat(chunks).toString("utf8").split("\0");
    if (fields.length >= 3) break;
  }
  fs.closeSync(3);
  const [file, cwd] = fields;
  try {
    process.chdir(cwd);
  } catch (error) {
    process.stderr.write(`ts-run.js: cannot enter ${cwd}: ${error.message}\n`);
    process.exit(126);
  }
  process.argv.splice(1, process.argv.length - 1, file);
  run(file, fs.readFileSync(file.replace(/\.ts$/, ".js"), "utf8"));
}

function main() {
  if (process.argv[2] === "--serve") {
    serve();
    return;
  }
  if (process.argv[2] === "--standby") {
    standby();
    return;
  }
  const compiled = process.argv[2] === "--compiled";
  const file = process.argv[compiled ? 3 : 2];
  if (!file) {
    process.stderr.write("usage: ts-run.js [--compiled] FILE.ts | --serve | --standby\n");
    process.exit(64);
  }
  const absolute = path.resolve(file);
  if (compiled) {
    process.argv.splice(1, 3, absolute);
    run(absolute, fs.readFileSync(absolute.replace(/\.ts$/, ".js"), "utf8"));
    return;
  }
  ts = require("typescript");
  const result = compile(absolute);
  if (result.diagnostics) {
    for (const diagnostic of result.diagnostics) {
      process.stderr.write(formatDiagnostic(diagnostic) + "\n");
    }
    process.exit(2);
  }
  process.argv.splice(1, 2, absolute);
  run(absolute, result.js);
}

main();
