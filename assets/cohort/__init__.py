"""Cohort stage: admissions, labels, patient-level splits, modality availability."""
