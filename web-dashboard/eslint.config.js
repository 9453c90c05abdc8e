// Lint for the dashboard: TypeScript's recommended rules, the rules of hooks, and
// jsx-a11y's strict accessibility rules (the browser tests run axe-core on the rendered
// pages; this catches the same class of mistakes in the source, before a page renders them).
import js from "@eslint/js";
import tseslint from "typescript-eslint";
import jsxA11y from "eslint-plugin-jsx-a11y";
import reactHooks from "eslint-plugin-react-hooks";

export default tseslint.config(
  { ignores: ["dist/", "node_modules/", "test-artifacts/"] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  jsxA11y.flatConfigs.strict,
  {
    files: ["src/**/*.{ts,tsx}"],
    plugins: { "react-hooks": reactHooks },
    rules: {
      "react-hooks/rules-of-hooks": "error",
      "react-hooks/exhaustive-deps": "error",
      // `const { a: _a, ...rest } = x` is how a field is left out of a copy.
      "@typescript-eslint/no-unused-vars": ["error", { ignoreRestSiblings: true }],
      // The boards and the kill feed scroll: keyboard users must be able to focus them to
      // scroll (WCAG 2.1.1; axe's scrollable-region-focusable, checked in the browser tests).
      "jsx-a11y/no-noninteractive-tabindex": ["error", { roles: ["table", "log"] }],
    },
  },
);
