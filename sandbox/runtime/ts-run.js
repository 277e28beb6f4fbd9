#!/usr/bin/env node
// Type-checks one TypeScript file strictly and, when it is clean, runs the emitted JavaScript
// in this same node process (so console output streams as it is produced).
//
//   node /app/ts-run.js main.ts
//
// Any diagnostic is printed as "file:line:col - error TSxxxx: message" on stderr and the exit
// code is 2, so a type or syntax error is a failed step carrying the compiler's message.
"use strict";

const fs = require("fs");
const path = require("path");
const Module = require("module");
const ts = require("typescript");

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

function compile(file) {
  const program = ts.createProgram([file], compilerOptions());
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
  return { js };
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
  const file = process.argv[2];
  if (!file) {
    process.stderr.write("usage: ts-run.js FILE.ts\n");
    process.exit(64);
  }
  const absolute = path.resolve(file);
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
