/** The dashboard (`mail-outbox ui`): a request handler to mount, and a server that runs it alone. */
export { createDashboardHandler, MAX_BULK, PAGE_CSP, PREVIEW_CSP, type DashboardAuth, type DashboardHandler, type DashboardOptions } from "./handler.js";
export { isLoopbackHost, serveDashboard, type DashboardServer, type ServeDashboardOptions } from "./server.js";
export { escapeHtml, html, raw, SafeHtml } from "./html.js";
