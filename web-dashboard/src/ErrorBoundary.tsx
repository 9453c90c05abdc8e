import { Component, type ErrorInfo, type ReactNode } from "react";

/** A page that throws shows what happened and a way on, instead of a blank screen; moving to
 * another route (`resetKey`) or "Try again" renders it afresh. */
export class ErrorBoundary extends Component<{ resetKey: string; children: ReactNode }, { error: Error | null }> {
  state: { error: Error | null } = { error: null };

  static getDerivedStateFromError(error: Error) {
    return { error };
  }

  componentDidCatch(error: Error, info: ErrorInfo) {
    console.warn("page failed", error, info.componentStack);
  }

  componentDidUpdate(prev: { resetKey: string }) {
    if (prev.resetKey !== this.props.resetKey && this.state.error) this.setState({ error: null });
  }

  render() {
    const { error } = this.state;
    if (!error) return this.props.children;
    return (
      <section role="alert" data-testid="page-error">
        <h1>This page failed</h1>
        <p className="bad">{error.message || String(error)}</p>
        <p>
          <button type="button" onClick={() => this.setState({ error: null })}>
            Try again
          </button>{" "}
          <a href="#/">back to the matches</a>
        </p>
      </section>
    );
  }
}
