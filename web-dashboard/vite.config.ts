import react from "@vitejs/plugin-react";
import { fileURLToPath } from "node:url";
import { defineConfig } from "vitest/config";

export default defineConfig({
  plugins: [react()],
  // The viewer client is the package in clients/typescript, built from its sources with the page.
  resolve: { alias: { "@grandstand/client": fileURLToPath(new URL("../clients/typescript/src/index.ts", import.meta.url)) } },
  build: { outDir: "dist", emptyOutDir: true, sourcemap: false },
  server: { proxy: { "/v1": { target: "http://127.0.0.1:8080", ws: true } } },
  test: { include: ["src/**/*.test.ts"], environment: "node" },
});
