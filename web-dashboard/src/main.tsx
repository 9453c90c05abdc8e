import { QueryClient, QueryClientProvider } from "@tanstack/react-query";
import { StrictMode } from "react";
import { createRoot } from "react-dom/client";
import { App } from "./App";
import "./metrics";
import "./styles.css";

// Shown data stays on screen when a refetch fails (with its age), never replaced by an error.
const client = new QueryClient({
  defaultOptions: { queries: { retry: 2, staleTime: 1000, refetchOnWindowFocus: false } },
});

createRoot(document.getElementById("root")!).render(
  <StrictMode>
    <QueryClientProvider client={client}>
      <App />
    </QueryClientProvider>
  </StrictMode>,
);
