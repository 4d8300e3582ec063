import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { createMetrics } from './metrics.ts';

/**
 * The dashboard and the alerts name metrics as plain strings; a renamed metric would leave a panel
 * empty or an alert that can never fire, and nothing else would notice.
 */

const repoFile = (path: string) => readFileSync(new URL(`../../${path}`, import.meta.url), 'utf8');

/** Every `targets[].expr` of the dashboard, at any depth (rows nest their panels). */
const dashboardExprs = (dashboard: unknown): string[] => {
  if (Array.isArray(dashboard)) {
    return dashboard.flatMap(dashboardExprs);
  }
  if (dashboard === null || typeof dashboard !== 'object') {
    return [];
  }
  return Object.entries(dashboard).flatMap(([name, value]) => {
    if (name === 'targets' && Array.isArray(value)) {
      return value.flatMap((target: { expr?: unknown }) =>
        typeof target.expr === 'string' ? [target.expr] : [],
      );
    }
    return dashboardExprs(value);
  });
};

/**
 * Every `expr:` value of a YAML rules file, without a YAML parser (none is installed and one is
 * not worth a dependency): plain and quoted one-line values, and `|`/`>` block scalars, whose
 * lines are those indented deeper than the `expr:` key.
 */
const yamlExprs = (text: string): string[] => {
  const lines = text.split('\n');
  const exprs: string[] = [];
  lines.forEach((line, i) => {
    const match = /^(\s*)(?:-\s+)?expr:\s*(.*)$/.exec(line);
    if (!match) {
      return;
    }
    const indent = match[1]?.length ?? 0;
    const value = (match[2] ?? '').trim();
    if (/^[|>][-+]?$/.test(value)) {
      const block: string[] = [];
      for (const next of lines.slice(i + 1)) {
        if (next.trim() !== '' && (/^\s*/.exec(next)?.[0].length ?? 0) <= indent) {
          break;
        }
        block.push(next.trim());
      }
      exprs.push(block.join(' ').trim());
    } else if (/^(['"]).*\1$/.test(value)) {
      exprs.push(value.slice(1, -1));
    } else {
      exprs.push(value.replace(/\s+#.*$/, ''));
    }
  });
  return exprs;
};

const metricNames = (expr: string): string[] =>
  expr.match(/\boutpost_[a-zA-Z0-9_]*[a-zA-Z0-9]/g) ?? [];

void describe('dashboard and alert metrics', () => {
  const dashboard = dashboardExprs(JSON.parse(repoFile('deploy/grafana/dashboards/outpost.json')));
  const alerts = yamlExprs(repoFile('deploy/prometheus/alerts.yml'));

  void it('finds the queries it checks', () => {
    assert.ok(dashboard.length >= 15, `only ${dashboard.length} dashboard queries found`);
    assert.ok(alerts.length >= 9, `only ${alerts.length} alert expressions found`);
    assert.ok(alerts.every((expr) => expr.length > 0));
  });

  void it('names only metrics that createMetrics() registers', async () => {
    const registered = new Map(
      (await createMetrics().registry.getMetricsAsJSON()).map((m) => [m.name, String(m.type)]),
    );
    const unknown = new Set<string>();
    for (const [source, exprs] of [
      ['dashboard', dashboard],
      ['alerts.yml', alerts],
    ] as const) {
      for (const name of exprs.flatMap(metricNames)) {
        if (registered.has(name)) {
          continue;
        }
        // The series a histogram exports under its name, and only a histogram's.
        const base = name.replace(/_(bucket|sum|count)$/, '');
        if (base === name || registered.get(base) !== 'histogram') {
          unknown.add(`${source}: ${name}`);
        }
      }
    }
    assert.deepEqual([...unknown], []);
  });

  void it('shows what an operator needs to see first', () => {
    const panels: [string, RegExp][] = [
      ['ingest rate', /rate\(outpost_events_accepted_total\b/],
      ['pending by state', /by \(state\).*outpost_events_pending\b/],
      ['oldest pending age', /\boutpost_oldest_pending_age_seconds\b/],
      ['replication lag', /\boutpost_replication_lag_(seconds|bytes)\b/],
      ['end-to-end latency', /histogram_quantile\(.*\boutpost_end_to_end_seconds_bucket\b/],
      ['dead letters', /\boutpost_dead_letters\b/],
      ['breaker state', /\boutpost_circuit_breaker_state\b/],
      ['integrity anomalies', /\boutpost_integrity_anomalies\b/],
    ];
    const missing = panels
      .filter(([, pattern]) => !dashboard.some((expr) => pattern.test(expr)))
      .map(([what]) => what);
    assert.deepEqual(missing, []);
  });

  void it('shows no age of a timestamp gauge that reads 0 for "never"', () => {
    // time() - 0 would show 56 years for a site with no integrity snapshot yet.
    const ages = dashboard.filter((expr) => /time\(\)\s*-/.test(expr));
    assert.ok(ages.length > 0, 'the dashboard shows the snapshot age');
    assert.deepEqual(
      ages.filter((expr) => !/_timestamp_seconds\s*>\s*0\b/.test(expr)),
      [],
    );
  });

  void it("lists every alert in the deploy README's table", () => {
    const names = [...repoFile('deploy/prometheus/alerts.yml').matchAll(/- alert: (\w+)/g)].map(
      (match) => match[1],
    );
    assert.ok(names.length >= 20, `only ${names.length} alerts found`);
    const table = repoFile('deploy/README.md');
    assert.deepEqual(
      names.filter((name) => !table.includes(`| \`${name}\` |`)),
      [],
    );
  });

  void it('reads block and quoted expressions from YAML', () => {
    const yaml = [
      'rules:',
      '  - alert: A',
      '    expr: >-',
      '      sum(outpost_a)',
      '        > 1',
      '    for: 1m',
      '  - alert: B',
      '    expr: "max(outpost_b) > 0"',
      '  - expr: outpost_c # trailing comment',
    ].join('\n');
    assert.deepEqual(yamlExprs(yaml), ['sum(outpost_a) > 1', 'max(outpost_b) > 0', 'outpost_c']);
  });
});
