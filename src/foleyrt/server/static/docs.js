// Starts Swagger UI on /docs (a file, not an inline script: the page's CSP runs no inline code).
window.addEventListener("DOMContentLoaded", () => {
  window.ui = SwaggerUIBundle({ url: "/openapi.json", dom_id: "#swagger-ui" });
});
