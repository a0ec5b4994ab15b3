// Swagger UI on the finished OpenAPI document. "Authorize" logs in through the
// OAuth2 password flow at /token, or takes a bearer token pasted by hand.
window.addEventListener("load", function () {
  var root = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: root.dataset.specUrl,
    dom_id: "#swagger-ui",
    deepLinking: true,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});
