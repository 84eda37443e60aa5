// Progressive enhancement: the copy buttons. Without JavaScript the token
// stays selectable in its read-only field.
document.querySelectorAll("button.copy").forEach(function (b) {
  b.addEventListener("click", function () {
    var field = document.getElementById(b.getAttribute("data-copy"));
    field.select();
    var done = function () { b.textContent = "Copied"; };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(field.value).then(done, function () { document.execCommand("copy"); done(); });
    } else {
      document.execCommand("copy");
      done();
    }
  });
});
