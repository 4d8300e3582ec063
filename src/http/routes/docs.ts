import { renderDocsPage } from '../docs-page.ts';
import { buildOpenApiDocument } from '../openapi.ts';
import type { App } from './shared.ts';

/** GET /openapi.json and GET /docs; both are built once, at registration. */
export const registerDocsRoutes = (app: App) => {
  const document = buildOpenApiDocument();
  const page = renderDocsPage(document);

  app.get('/openapi.json', (c) => c.json(document));

  app.get('/docs', (c) =>
    c.html(page.html, 200, {
      'Content-Security-Policy': page.contentSecurityPolicy,
      'X-Content-Type-Options': 'nosniff',
    }),
  );
};
