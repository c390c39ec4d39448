// The chart library for the page's views: uPlot, vendored under static/vendor/uplot/
// (version and hashes in static/vendor/README.md). Loaded once, by a <script src> element
// and a stylesheet link from this origin (the CSP allows 'self' only; no inline script).

let loading = null;

export function loadUPlot() {
  if (window.uPlot) return Promise.resolve(window.uPlot);
  if (loading) return loading;
  loading = new Promise((resolve, reject) => {
    const css = document.createElement("link");
    css.rel = "stylesheet";
    css.href = "/static/vendor/uplot/uPlot.min.css";
    document.head.append(css);
    const s = document.createElement("script");
    s.src = "/static/vendor/uplot/uPlot.iife.min.js";
    s.onload = () => resolve(window.uPlot);
    s.onerror = () => { loading = null; reject(new Error("the chart library did not load")); };
    document.head.append(s);
  });
  return loading;
}

// colours for overlaid channels (distinct, readable on white), and for limits and alarm spans
export const SERIES_COLOURS = ["#1f5fbf", "#2e8b57", "#8a4fbf", "#c06000", "#00838f", "#6d4c41"];
export const LIMIT_COLOURS = { hh: "#c62828", h: "#ef6c00", l: "#ef6c00", ll: "#c62828" };
export const SPAN_COLOURS = { high: "rgba(198, 40, 40, 0.16)", medium: "rgba(239, 108, 0, 0.16)",
                              low: "rgba(120, 120, 120, 0.14)" };
