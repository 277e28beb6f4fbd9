#!/usr/bin/env node
// Type-checks one TypeScript file strictly and, when it is clean, runs the emitted JavaScript
// in this same node process (so console output streams as it is produced).
//
//   node /app/ts-run.js main.ts              check, then run (a cold compiler: ~2 s)
//   node /app/ts-run.js --serve              the sandbox's warm checker (see serve())
//   node /app/ts-run.js --compiled main.ts   run main.js, which the warm checker wrote
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

function compile(file, host, oldProgram) {
  const program = ts.createProgram([file], compilerOptions(), host, oldProgram);
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
  const cached = new Map();
  const readSourceFile = host.getSourceFile.bind(host);
  // Only the runtime's own files (read-only: the compiler's lib, @types) are kept; anything
  // a step may change is read again.
  host.getSourceFile = (fileName, languageVersion, onError, shouldCreate) => {
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
        const result = compile(file, host, previous);
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

function main() {
  if (process.argv[2] === "--serve") {
    serve();
    return;
  }
  const compiled = process.argv[2] === "--compiled";
  const file = process.argv[compiled ? 3 : 2];
  if (!file) {
    process.stderr.write("usage: ts-run.js [--compiled] FILE.ts | --serve\n");
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
